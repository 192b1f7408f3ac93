//! `debugging::enable_check_numerics`: the first op producing a NaN or an infinity is
//! reported with its name and source line, eagerly (a panic) and compiled (an `Err`).
//!
//! The switch is process-wide, so this binary holds a single test.

use tapeflow::{debugging, function, Error, GradientTape, Tensor};

fn line_of(marker: &str) -> String {
    let src = include_str!("check_numerics.rs");
    let n = src
        .lines()
        .position(|l| l.contains(marker) && !l.contains("line_of"))
        .expect("marker");
    format!("tests/check_numerics.rs:{}", n + 1)
}

#[test]
fn numerics_checks_name_the_first_non_finite_op_and_its_line() {
    let f = function(|x: &Tensor| {
        let y = x * 2.0;
        let z = y.log(); // MARK-LOG
        let w = &z * &z;
        Ok(w.sum_all())
    });
    let bad = Tensor::vec(&[1.0f32, -1.0, 3.0]);
    // off: the optimized graph runs and returns the NaN
    assert!(f.call(&bad).unwrap().to_scalar().unwrap().is_nan());

    debugging::enable_check_numerics();
    assert!(debugging::check_numerics_enabled());
    match f.call(&bad) {
        Err(Error::NonFinite {
            op,
            value,
            index,
            ty,
            loc,
        }) => {
            assert_eq!(
                (op, value.as_str(), index, ty.as_str()),
                ("log", "NaN", 1, "f32[3]")
            );
            assert_eq!(loc, line_of("MARK-LOG"));
        }
        other => panic!("expected NonFinite, got {:?}", other.map(|_| ())),
    }
    let good = Tensor::vec(&[1.0f32, 2.0, 3.0]);
    assert!(f.call(&good).unwrap().to_scalar().unwrap().is_finite());
    assert!(f
        .retrace_reasons()
        .iter()
        .any(|r| r.contains("numerics checks are on")));

    // an infinity from a division, and one in a backward op (attributed to its forward line)
    let g = function(|x: &Tensor| {
        let tape = GradientTape::new();
        let y = tape.record(|| {
            tape.watch(x);
            x.powf(0.5).sum_all() // MARK-SQRT
        });
        let dx = tape.gradient(&y, x)?;
        Ok((y, dx))
    });
    let e = g
        .call(&Tensor::vec(&[4.0f32, 0.0]))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("check_numerics: ") && e.contains("inf") && e.contains(&line_of("MARK-SQRT")),
        "{e}"
    );
    let h = function(|x: &Tensor| Ok(x / &x.sum_all())); // MARK-DIV
    let e = h.call(&Tensor::vec(&[1.0f32, -1.0])).unwrap_err();
    assert!(
        matches!(&e, Error::NonFinite { op: "div", loc, .. } if *loc == line_of("MARK-DIV")),
        "{e}"
    );

    // inside a loop that only adds products to its carry (which runs without its body's
    // plan when numerics are not checked): the body's product is named
    let acc = function(|xs: &Tensor, w: &Tensor| {
        let (c, _) = tapeflow::scan(
            |c, x| {
                let p = x[0].matmul_t(w, true, false); // MARK-LOOP
                Ok((vec![&c[0] + &p], vec![]))
            },
            &[Tensor::zeros(&[2, 2])],
            std::slice::from_ref(xs),
        )?;
        Ok(c[0].clone())
    });
    let xs =
        Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 1e30, 1.0, 1.0, 1.0], &[2, 2, 2]).unwrap();
    let w = Tensor::from_vec(vec![1e30f32, 1.0, 1.0, 1.0], &[2, 2]).unwrap();
    let e = acc.call(&xs, &w).unwrap_err();
    assert!(
        matches!(&e, Error::NonFinite { op: "matmul", loc, .. } if *loc == line_of("MARK-LOOP")),
        "{e}"
    );

    // eager: the op panics with the same message
    let r = std::panic::catch_unwind(|| {
        Tensor::vec(&[0.0f64, -2.0]).log() // MARK-EAGER
    });
    let msg = r.expect_err("panics");
    let msg = msg.downcast_ref::<String>().expect("a formatted message");
    assert!(
        msg.contains("check_numerics: log produced -inf at element 0 of its f64[2] result")
            && msg.contains(&line_of("MARK-EAGER")),
        "{msg}"
    );

    debugging::disable_check_numerics();
    assert!(f.call(&bad).unwrap().to_scalar().unwrap().is_nan());
    assert!(Tensor::vec(&[-1.0f32]).log().to_vec_f32().unwrap()[0].is_nan());
}
